"""The functions the local multiple-choice task of check_lmms.py names (shapes_mc.py copies this file next to the
task's yaml, where lmms-eval's `!function shapes_mc_task.NAME` finds it)."""


def doc_to_visual(doc):
    """The row's one image (decoded by `datasets` from the parquet file's image column)."""
    return [doc["image"].convert("RGB")]


def matthews(items):
    """lmms-eval's own `mcc` aggregation, called through this wrapper so that lmms-eval does not bootstrap its
    standard error (100,000 resamples: minutes on a CPU). The task asks for `mcc` only to have lmms-eval log
    each row's (gold, pred)."""
    from lmms_eval.api.metrics import matthews_corrcoef

    return matthews_corrcoef(items)
