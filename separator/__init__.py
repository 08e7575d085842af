"""separator: local VoiceSeparate engine."""
