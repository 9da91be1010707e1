"""What any Lightning user can import: the LightningModule, the p schedule and callbacks."""
