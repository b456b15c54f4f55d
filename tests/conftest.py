"""Test-wide settings: nothing leaves this machine (DESIGN.md, "Network rules")."""

import os
import tempfile

_tmp = tempfile.mkdtemp(prefix="decoupled-tests-")
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_BASE_URL"] = "http://127.0.0.1:9"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("WANDB_CONFIG_DIR", os.path.join(_tmp, "wandb-config"))
os.environ.setdefault("WANDB_CACHE_DIR", os.path.join(_tmp, "wandb-cache"))
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_AUTH_MODE"] = "disabled"
