"""Does bf16 change Tiny-ImageNet results beyond seed noise? KD at every T, seed 0, in fp32 and
bf16 (the bf16 runs are Tier 1's own runs: same configs, same run ids)."""
from tin_recipe import TEMPERATURES, student

from tstudy import Study

study = Study(name="tin_precision", description=__doc__, base=student(),
              axes={"precision": ["bf16", "fp32"], "temperature": TEMPERATURES}, seeds=[0])
