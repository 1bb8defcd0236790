"""stepwise: each step of a generator under a context, the consumer outside it, no item kept."""

import weakref

import torch

from utils.steps import stepwise


class Item:
    pass


def test_steps_run_in_the_mode_and_the_consumer_outside_it():
    made, alive, closed, refs = [], [], [], []

    def items():
        try:
            for _ in range(3):
                made.append(torch.is_inference_mode_enabled())
                alive.append(sum(ref() is not None for ref in refs))  # items handed out, still referenced
                yield Item()
        finally:
            closed.append(True)

    consumer_modes = []
    for item in stepwise(items(), torch.inference_mode):
        consumer_modes.append(torch.is_inference_mode_enabled())
        refs.append(weakref.ref(item))
        del item
    assert made == [True] * 3 and consumer_modes == [False] * 3 and closed == [True]
    assert alive == [0, 0, 0]  # torch's decorator keeps the previous item here: [0, 1, 1]


def test_closing_early_closes_the_generator():
    closed = []

    def items():
        try:
            yield from range(10)
        finally:
            closed.append(True)

    steps = stepwise(items(), torch.no_grad)
    assert next(steps) == 0
    steps.close()
    assert closed == [True]
