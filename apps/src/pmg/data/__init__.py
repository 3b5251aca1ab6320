"""Datasets: the one on-disk format, the embedded catalog, loaders, splits, data modules."""

from pmg.data.catalog import CatalogConfig, generate_catalog, render_item_image, write_catalog
from pmg.data.format import (
    AttributeSpec,
    DatasetError,
    InteractionData,
    Item,
    ItemKind,
    LoadReport,
    read_dataset,
    write_dataset,
)

__all__ = [
    "AttributeSpec",
    "CatalogConfig",
    "DatasetError",
    "InteractionData",
    "Item",
    "ItemKind",
    "LoadReport",
    "generate_catalog",
    "read_dataset",
    "render_item_image",
    "write_catalog",
    "write_dataset",
]
