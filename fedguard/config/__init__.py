"""The experiment config: typed schema, validation, and the flat form Flower carries.

Hydra composes `configs/` on top of the `FedGuardConfig` schema (registered as
`fedguard_schema`), so a value of the wrong type fails at composition with the key named.
The schema's defaults are the only defaults: a group file of `configs/` selects an option and
sets only what that option changes. `validate` adds the semantic checks (allowed names, read
from the registries of the implementations; ranges; files on disk) and runs before Ray starts.

Where things are:
- one module per config group, holding its dataclass and `validate_<group>` (its own values):
  `dataset`, `model`, `partitioner`, `defense`, `attack`, `stream_poison`, `sanitizer`,
  `backend`, `faults`; `schema`: the root (`FedGuardConfig`: the groups and the run-level keys);
- `validate`: `validate(cfg)`, the group checks and the checks across groups;
- `errors`: `ConfigError` and how a check fails;
- `flat`: `flatten` / `from_flat` for `context.run_config`, and pyproject's app-config table;
- `files`: `compose` (as `fedguard run` composes `configs/`) and `resume_config`;
- `keys`: the config's keys against the schema (unknown `+key`, removed `~key`), the warnings
  about knobs the selected entry does not read, Hydra's composition errors as one line;
- `describe`: every knob with its default and description (its field's `# comment`), and which
  entry of a registry reads which (`fedguard list`).
"""

from fedguard.config.errors import ConfigError
from fedguard.config.files import CONFIG_DIR, RESUME_FREE_KEYS, compose, resume_config
from fedguard.config.flat import flatten, flwr_app_config_toml, from_flat
from fedguard.config.schema import FedGuardConfig, register_schema
from fedguard.config.validate import validate

__all__ = ["CONFIG_DIR", "RESUME_FREE_KEYS", "ConfigError", "FedGuardConfig", "compose", "flatten",
           "flwr_app_config_toml", "from_flat", "register_schema", "resume_config", "validate"]
