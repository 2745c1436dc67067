"""Attacks: every attack of the simulation, and the registries that name them.

Importing this package imports every attack module, which fills the two registries:

- `ATTACKS`: `attack.name` -> the client-side craft of that attack (`craft.AttackRound` ->
  `craft.Crafted`); "none" -> None.
- `STREAM_POISONS`: `stream_poison.name` -> the poison of the selected stream samples; "none" -> None.

Where things are:

- `plan`: the schedule and the ground truth: which phase a round is in (`AttackPlan`,
  `attack_plan`, `round_phase`), who is malicious (`malicious_ids`, `malicious_set`), the
  seeds colluding clients share (`shared_seed`, so they craft against the same trigger batch).
- `craft`: what every client-side attack gets and gives back, and `craft`, the lookup of
  `attack.name` in `ATTACKS` (honest rounds trained here).
- One module per attack family, each registering its attacks by name:
  `accumulative` (Pang et al., NeurIPS 2021, both forms, the stealth rule; its math, the
  second-order alignment objective and the data form's perturbations, in `objectives`),
  `backdoor` (triggers, batch poisoning, the backdoor attack), `label_flip` (the one
  label-flip rule, `flip_label`), `model_poisoning` (sign_flip, scaling, gaussian),
  `omniscient` (the attacks that read the round's honest updates: ALIE, IPM, and MinMax/MinSum
  and Fang, their math in `agr_agnostic` and `fang`; the server-side placement is the strategy
  adapter `strategies.omniscient`), `dba` (the distributed backdoor: a part of the patch per
  client), `neurotoxin` (the backdoor on the coordinates the honest update changes least),
  `adaptive_md` (the accumulative attack kept under its estimate of mddsc's MD threshold),
  `bn_shrink` (fedguard's federated accumulation that survives norm clipping).
- `stream_poison`: the poisons an outsider injects into the honest clients' streams.
- `client`: the Flower-facing glue of a malicious ClientApp (its data, the stealth rule's
  state, the reply). Not imported here: the ClientApp imports it.

A new attack is one module here with a function registered by `@ATTACKS.register(name,
summary)`, imported below (a server-side, omniscient one: its math in `omniscient.crafted_updates`,
placed by the adapter `strategies.omniscient`).
Nothing here imports `fedguard.config` (the config validates names against these registries).
"""

from fedguard.attacks.registries import ATTACKS, STREAM_POISONS  # noqa: I001 (first: the modules register into them)

# Every attack module, imported to fill the registries; this order is the order of the names
# (`fedguard list`, error messages). `plan` registers "none".
from fedguard.attacks import plan  # noqa: F401
from fedguard.attacks import accumulative  # noqa: F401
from fedguard.attacks import label_flip  # noqa: F401
from fedguard.attacks import backdoor  # noqa: F401
from fedguard.attacks import model_poisoning  # noqa: F401
from fedguard.attacks import omniscient  # noqa: F401
from fedguard.attacks import dba  # noqa: F401
from fedguard.attacks import neurotoxin  # noqa: F401
from fedguard.attacks import adaptive_md  # noqa: F401
from fedguard.attacks import bn_shrink  # noqa: F401
from fedguard.attacks import stream_poison  # noqa: F401
from fedguard.attacks.plan import PHASES, AttackPlan, attack_plan, malicious_ids, malicious_set, round_phase, shared_seed

__all__ = ["ATTACKS", "PHASES", "STREAM_POISONS", "AttackPlan", "attack_plan", "malicious_ids", "malicious_set",
           "round_phase", "shared_seed"]
