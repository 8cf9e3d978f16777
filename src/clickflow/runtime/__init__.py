"""Starting the embedded servers and supervising the services (`clickflow up`)."""
