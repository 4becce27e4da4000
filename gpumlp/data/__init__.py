"""The images: dataset records, IDX files, verified download and cache, splits, and a user's own
images turned into the network's 28×28 input."""
