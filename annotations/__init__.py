"""annotations: the data layer of pipstc (Parquet label store, dataset formats, Label Studio review). No torch."""
