"""Upstream PopT's training-loop conventions, as small pure functions the jobs switch on.

Upstream (czlwang/PopulationTransformer `runner.py`, `tasks/base_task.py`) has habits that
change the numbers a run produces; each is reproduced here behind a config field:

* `loss.backward(loss)`: the gradient is scaled by the loss (`config.loss_scaled_grad`,
  default True; implemented in `core.steps.make_train_step`);
* validation after update 1, then every `log_step` updates, and after the last one
  (`config.eval_schedule = "upstream"`; `core.loop.Schedule.eval_due`);
* no shuffling (`shuffle: False` in both experiment configs): every epoch visits the training
  split in the order the split made it, fine-tuning keeping the short last batch
  (`config.data.order = "upstream"`; `datasets.make_dataset(order="fixed")`);
* torch optimisers skip parameters whose `.grad` is None, so the heads a loss never reads
  get neither an update nor weight decay (`receives_gradient`, used by `optim`).
"""

from __future__ import annotations

EVAL_SCHEDULES = ("every", "upstream")
DATA_ORDERS = ("shuffle", "upstream")

# PopT modules no loss reads: pretraining never uses the spectrogram head; fine-tuning reads
# the body's hidden states only (upstream's `intermediate_rep=True`), never its heads.
_PRETRAIN_UNUSED = ("spec_prediction_head",)
_FINETUNE_UNUSED = ("cls_head", "token_cls_head", "spec_prediction_head")


def _names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def receives_gradient(path) -> bool:
    """False for the parameters of a PopT head that no loss reads (path of a params tree).

    A `PopT` (pretraining) never reads `spec_prediction_head`; a `PopTClassifier`
    (fine-tuning, paths under `upstream`) reads none of the body's heads.
    """
    names = _names(path)
    if not names:
        return True
    if names[0] == "upstream":
        return not (len(names) > 1 and names[1] in _FINETUNE_UNUSED)
    return names[0] not in _PRETRAIN_UNUSED
