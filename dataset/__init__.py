"""DeepGlobe land-cover data: classes and palette (classes), file reading and writing (io), the split
data set (deepglobe) and a synthetic generator in the same layout (synthetic)."""
