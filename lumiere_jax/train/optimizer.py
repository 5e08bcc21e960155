"""optax AdamW with linear warmup then cosine (or constant) learning rate, and global-norm clipping."""
import optax

SCHEDULES = ("cosine", "constant")


def learning_rate_schedule(train) -> optax.Schedule:
    if train.lr_schedule not in SCHEDULES:
        raise ValueError(f"train.lr_schedule={train.lr_schedule!r} is not one of {SCHEDULES}")
    if train.learning_rate <= 0 or train.warmup_steps < 0 or train.num_steps < 1:
        raise ValueError("train.learning_rate must be > 0, train.warmup_steps >= 0 and train.num_steps >= 1")
    warmup = optax.linear_schedule(0.0, train.learning_rate, max(train.warmup_steps, 1))
    if train.lr_schedule == "constant":
        after = optax.constant_schedule(train.learning_rate)
    else:
        after = optax.cosine_decay_schedule(train.learning_rate, max(train.num_steps - train.warmup_steps, 1))
    return optax.join_schedules([warmup, after], [train.warmup_steps])


def make_optimizer(train) -> optax.GradientTransformation:
    """The transform applied to the trainable parameters' gradients (clipping, then AdamW)."""
    if train.grad_clip < 0:
        raise ValueError(f"train.grad_clip={train.grad_clip} must be >= 0 (0 disables clipping)")
    adamw = optax.adamw(learning_rate_schedule(train), b1=train.b1, b2=train.b2, weight_decay=train.weight_decay)
    if train.grad_clip == 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(train.grad_clip), adamw)
