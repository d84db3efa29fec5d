"""Labels of the training-curve plot logged with each run."""

from __future__ import annotations

from forecast.plots import curve_labels


def test_validation_curve_names_the_metric_epochs_are_chosen_on() -> None:
    # ETTh2 trains on Huber and picks epochs on MSE: the plot must not call MSE a Huber loss
    assert curve_labels("huber", "mse") == ("train loss (huber)", "validation mse")
    assert curve_labels("huber", "mae") == ("train loss (huber)", "validation mae")


def test_default_validation_curve_is_the_training_loss() -> None:
    assert curve_labels("huber", "loss") == ("train loss (huber)", "validation huber")
