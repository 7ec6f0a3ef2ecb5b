"""Pure manifest builders (`builders`) and the only module that talks to the API server (`client`)."""
