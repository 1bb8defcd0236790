"""The patch pipeline: the grid that tiles an image, the contexts of each patch, the TTA views, the
merge of overlapping logits and the Predictor that runs a whole image through an FCtLNet."""
