"""The model catalog, downloads from the Hub, model shapes and the Ollama Modelfile."""
