import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Tests import the package from the source root even without an editable install.
sys.path.insert(0, str(ROOT / "operator"))
