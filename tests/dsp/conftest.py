import sys
from pathlib import Path

# tests/ has no __init__.py; make the helpers module importable by its plain name.
sys.path.insert(0, str(Path(__file__).parent))
