"""Where and how a run executes: device choice, seeding, the environment record, and the
``torch.distributed`` process plumbing. Below every package that trains or evaluates."""
