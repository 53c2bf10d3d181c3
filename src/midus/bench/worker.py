"""One model's measurement in a fresh process: `python -m midus.bench.worker RESULT.json NAME SETTINGS_JSON`.

Writes {"measurement": {...}} or {"error": "...", "exit_code": N} to RESULT.json.
"""

import json
import sys
from pathlib import Path


def main(result_path: str, name: str, settings_json: str) -> int:
    import midus  # noqa: F401  (registers the MIDUS Auto classes)
    from midus.errors import MidusError

    from .measure import BenchSettings, measure

    try:
        measurement = measure(name, BenchSettings.model_validate_json(settings_json))
        payload = {"measurement": measurement.model_dump(mode="json")}
    except MidusError as error:
        payload = {"error": str(error), "exit_code": error.exit_code}
    Path(result_path).write_text(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
