"""Text conditioning: the T5 tokenizer, t5x / Hugging Face checkpoint readers, caption embeddings."""
