"""Labels of the training-curve plot logged with each run."""

from __future__ import annotations

from forecast.plots import curve_labels


def test_validation_curve_names_the_metric_epochs_are_chosen_on() -> None:
    # ETTh2 trains on Huber and picks epochs on MSE: the plot must not call MSE a Huber loss
    assert curve_labels("huber", "mse") == ("train loss (huber)", "validation mse")
    assert curve_labels("huber", "mae") == ("train loss (huber)", "validation mae")


def test_default_validation_curve_is_the_training_loss() -> None:
    assert curve_labels("huber", "loss") == ("train loss (huber)", "validation huber")


def red_band_pixels(path) -> int:
    """Pixels of the band's colour: tab:red at 20% over white, (247, 216, 216) or near."""
    import matplotlib.image

    rgb = (matplotlib.image.imread(path)[..., :3] * 255).astype(int)
    near = (abs(rgb[..., 0] - 247) < 6) & (abs(rgb[..., 1] - 216) < 8) & \
        (abs(rgb[..., 2] - 216) < 8)
    return int(near.sum())


def test_the_forecast_plot_shows_the_calibrated_band(tmp_path, tiny_prepared, tiny_config):
    import torch

    from forecast.intervals import calibrate
    from forecast.model import build_model
    from forecast.plots import forecast_vs_actual

    torch.manual_seed(0)
    model = build_model(tiny_config.model, tiny_prepared.lookback, tiny_prepared.horizon,
                        tiny_prepared.n_channels)
    calibration = calibrate(model, tiny_prepared.windows("val"))
    assert calibration.gives(0.8)
    plain = forecast_vs_actual(model, tiny_prepared, tmp_path / "plain.png")
    banded = forecast_vs_actual(model, tiny_prepared, tmp_path / "band.png",
                                calibration=calibration)
    # the red line's anti-aliased edges give a few such pixels; the band, tens of thousands
    assert red_band_pixels(banded) > 20 * max(red_band_pixels(plain), 100)
