"""Wrong calls that mypy --strict and pyright (strict) must both reject
(tests/compat/test_typing.py). Each line ending in a "wrong" comment (saying what is wrong)
must get an error from each checker, and no other line may. Never run; only checked."""

from liteq import current_task, task


@task
def add(a: int, b: int) -> int:
    return a + b


@task(queue="emails")
async def send_email(to: str, subject: str) -> str:
    return to


@task
def square(x: int) -> int:
    return x * x


add.delay("1", 2)  # wrong: argument type
add.delay(1)  # wrong: missing argument
add.delay(1, 2, c=3)  # wrong: unknown keyword
send_email.delay(42, "subject")  # wrong: argument type of an async task
send_email.s("a@example.com")  # wrong: missing argument in a signature
add.apply_async((1, 2)).result().upper()  # wrong: result use (int has no upper)
square.map(["a", "b"])  # wrong: map item type
add.map([1, 2])  # wrong: map of a task taking two arguments
text: str = add.delay(1, 2).result()  # wrong: result type
page: int = send_email.delay("a", "b").result()  # wrong: result type of an async task
add("1", 2)  # wrong: direct call argument type
label: int = current_task.name  # wrong: current_task.name is a str
