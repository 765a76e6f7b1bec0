"""A deliberately small model family used to test the serving platform on its own."""
