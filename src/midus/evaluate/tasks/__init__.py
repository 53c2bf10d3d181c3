"""lm-eval task YAML templates (data, not code): `offline.write_heldout_tasks` fills them in."""

from pathlib import Path

TEMPLATES = Path(__file__).parent
