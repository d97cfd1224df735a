"""The recipes shipped with samora-kit, as the data package `samora_kit.recipes`: list them with
`samora-kit recipes ls`, copy one (and the recipes it refers to) with `samora-kit recipes cp NAME DEST`."""
