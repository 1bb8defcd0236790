"""DeepGlobe land-cover data: classes and palette (classes), file reading and writing (io), the split
layout that every data set shares (split_layout) and a synthetic generator in the same layout (synthetic)."""
