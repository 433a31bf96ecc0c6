"""Tiny-ImageNet CPU program (small scale), tier 3: KD across T for SGD and AdamW, 15 and 45 epochs
(Figs. 2 and 3).

SGD (lr 0.1, wd 5e-4) and AdamW (lr 1e-3, wd 0.05), the same step schedule (x 0.1 at 50 % and
75 %), each evaluated at 1/3 and 2/3 of its epochs and at the end; T in {1, 2, 4, 8, 16}, seeds
0-2; resnet8x4 -> resnet8 at 16 px (tin_recipe.py). SGD at 15 epochs is tier 1's KD.
"""
from tin_recipe import CPU_NOTE, CPU_DURATIONS, CPU_SEEDS, OPTIMIZERS, TEMPERATURES, cpu_student, thirds

from tstudy import Study

study = Study(name="tin_cpu_tier3", description=__doc__, figure_note=CPU_NOTE, base=cpu_student(),
              axes={("optimizer", "lr", "weight_decay"): OPTIMIZERS, "epochs": CPU_DURATIONS,
                    "temperature": TEMPERATURES}, derive=thirds, seeds=CPU_SEEDS)
