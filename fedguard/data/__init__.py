"""Data: sources (digits, MNIST, CIFAR-10, synthetic, hub) and flwr-datasets partitioning."""
