"""Client-side attacks: the pure, tested core of the accumulative poisoning attack.

- `plan`: which phase a malicious client is in at a given round, who is malicious, and the
  seeds colluding clients share (so they craft against the same trigger batch).
- `objectives`: the second-order alignment objective of Pang et al. (NeurIPS 2021), the
  poisoner's update direction, the trigger update, norm scaling, and the data form
  (L-inf perturbation of a clean batch).

Nothing here touches Flower: the ClientApp turns these tensors into replies.
"""

from fedguard.attacks.plan import PHASES, AttackPlan, malicious_ids, shared_seed

__all__ = ["PHASES", "AttackPlan", "malicious_ids", "shared_seed"]
