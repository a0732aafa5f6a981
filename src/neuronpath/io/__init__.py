"""Files: image folders and label mapping, image preprocessing, and run folders on disk."""
