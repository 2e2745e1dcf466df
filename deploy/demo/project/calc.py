"""A tiny calculator module with one bug for the demo job to find and fix."""


def add(a: float, b: float) -> float:
    return a - b


def mean(values: list[float]) -> float:
    if not values:
        raise ValueError("mean of an empty list")
    total = 0.0
    for value in values:
        total = add(total, value)
    return total / len(values)
