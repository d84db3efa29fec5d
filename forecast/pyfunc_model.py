"""MLflow "models from code" entry point: MLflow executes this file to build the pyfunc
wrapper when the model is logged and when it is loaded, so the wrapper is never pickled."""

import mlflow

from forecast.packaging import ForecastModel

mlflow.models.set_model(ForecastModel())
