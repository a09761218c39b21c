"""Developer tools: the synthetic EHR data generator (``tools.ehrgen``)."""
