"""Format ``coin``: CoIN's test rows (see :mod:`dymoe.data.coin`), read exactly as before the format registry."""

from __future__ import annotations

from dymoe.data.formats.base import EvalFormat


class CoinFormat(EvalFormat):
    """CoIN test rows; :meth:`load` is :func:`dymoe.data.coin.load_coin_test` (instruction-type rewriting and the
    scorer's side files included)."""

    def load(self, task, eval_set, *, instruction_type: str = "origin", seed: int = 0) -> list:
        from dymoe.data.coin import load_coin_test

        return load_coin_test(task, eval_set, instruction_type=instruction_type, seed=seed)

    def check(self, task, eval_set) -> list[tuple[int | None, str]]:
        from dymoe.data.coin import load_coin_test
        from dymoe.errors import DataError

        try:
            load_coin_test(task, eval_set)
        except DataError as err:
            return [(None, str(err))]
        return []
