"""The embedded model zoo: tiny models of the real architectures trained on the catalog
(or real checkpoints by config), cached by content hash, loaded by later stages with
``load_zoo(run)``. Importing this package loads no model library."""

from pmg.zoo.config import ZooConfig
from pmg.zoo.errors import ZooError
from pmg.zoo.manifest import Zoo, ZooModel, load_zoo, read_zoo_folder
from pmg.zoo.stage import ZOO_STAGE, run_zoo_stage

__all__ = ["ZooConfig", "ZOO_STAGE", "run_zoo_stage", "Zoo", "ZooModel", "ZooError", "load_zoo", "read_zoo_folder"]
