"""The engine: training (steps, epochs, checkpoint policy) and evaluation/prediction over data sets."""
