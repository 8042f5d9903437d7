"""Deploy: serve a published registry version on KServe, Vertex AI or TF Serving on its own."""
