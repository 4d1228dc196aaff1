"""Safe remediation: Alertmanager webhook receiver, policy, actions, safety gates and the audit log."""
