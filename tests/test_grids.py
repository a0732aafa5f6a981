import numpy as np
import pytest

from neuronpath.engine.grids import GRIDS, alpha_grid


def test_left_grid_is_the_official_one():
    grid = alpha_grid("left", 20)
    assert grid.points[0] == 0.0 and grid.points[-1] == pytest.approx(0.95)
    assert set(grid.weights) == {1 / 20}


def test_right_grid_is_eq3():
    grid = alpha_grid("right", 4)
    assert grid.points == (0.25, 0.5, 0.75, 1.0)


@pytest.mark.parametrize("name", GRIDS)
def test_weights_sum_to_one_and_points_in_unit_interval(name):
    grid = alpha_grid(name, 9)
    assert sum(grid.weights) == pytest.approx(1.0)
    assert all(0 <= p <= 1 for p in grid.points)


def test_quadrature_orders():
    def f(a):
        return 5 * np.asarray(a) ** 4  # integral over [0, 1] is 1

    def integrate(name, m):
        g = alpha_grid(name, m)
        return float(np.dot(g.weights, f(g.points)))

    assert integrate("gauss-legendre", 3) == pytest.approx(1.0, abs=1e-12)  # exact to degree 5
    assert abs(integrate("midpoint", 50) - 1) < abs(integrate("left", 50) - 1)
    assert abs(integrate("trapezoid", 50) - 1) < abs(integrate("right", 50) - 1)


def test_bad_grid_arguments():
    with pytest.raises(ValueError, match="alphas"):
        alpha_grid("simpson", 5)
    with pytest.raises(ValueError, match="steps"):
        alpha_grid("left", 0)
