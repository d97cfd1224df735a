"""SAMed's learning rate: linear warm-up, then polynomial decay."""


def samed_lr(step: int, base_lr: float, warmup_iters: int, max_iters: int, power: float = 0.9) -> float:
    if step < warmup_iters:
        return base_lr * (step + 1) / warmup_iters
    progress = (step - warmup_iters) / max(1, max_iters)
    return base_lr * max(0.0, 1.0 - progress) ** power
