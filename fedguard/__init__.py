"""fedguard: federated simulation of poisoned data streams and server-side defenses.

Data flow: data.sources -> data.partition -> streams -> client_app (clients/attacks)
-> strategies (defenses, aggregators) -> server_app -> recorder / report.
"""

__version__ = "0.1.0"
