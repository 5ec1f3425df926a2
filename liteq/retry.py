"""The retry policy: whether a failed attempt is retried, and after how long."""


def should_retry(attempts: int, max_retries: int) -> bool:
    """True while retries remain: max_retries counts retries after the first attempt."""
    return attempts <= max_retries


def retry_delay(attempts: int, base: float, backoff: float, max_delay: float) -> float:
    """Seconds to wait before the next attempt: base * backoff**(attempts-1), capped."""
    try:
        delay = base * (backoff ** max(attempts - 1, 0))
    except OverflowError:
        delay = max_delay
    return min(delay, max_delay)
