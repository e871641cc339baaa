"""The Triptych operator: turns a MultimodalDeployment into role Deployments and reports their status."""
