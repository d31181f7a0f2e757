"""Tests of the deployment files in deploy/ (container image, compose, Kubernetes, systemd)."""
