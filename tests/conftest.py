import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "unit"))  # shared test models (linear_gaussian.py)
