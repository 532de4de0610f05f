"""Verifier of the example CSV task: any filled grid that keeps the clues and is a valid sudoku."""

import math


def sudoku(answer: str, fields: dict) -> bool:
    """`answer` is the grid's digits row by row (spaces ignored); `fields` the CSV row, `size` an int."""
    size, puzzle = fields["size"], fields["puzzle"]
    cells = "".join(answer.split())
    if len(cells) != size * size or not all(c.isdigit() and 1 <= int(c) <= size for c in cells):
        return False
    if any(clue != "0" and clue != cell for clue, cell in zip(puzzle, cells)):
        return False
    grid = [[int(cells[r * size + c]) for c in range(size)] for r in range(size)]
    box = math.isqrt(size)
    boxes = [[grid[r][c] for r in range(top, top + box) for c in range(left, left + box)]
             for top in range(0, size, box) for left in range(0, size, box)]
    return all(sorted(group) == list(range(1, size + 1)) for group in grid + [list(col) for col in zip(*grid)] + boxes)
