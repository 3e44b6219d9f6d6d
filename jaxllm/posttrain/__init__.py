"""Post-training: the chat template, chat and preference data, SFT and DPO stages (run by jaxllm.train.run)."""
