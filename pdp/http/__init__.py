"""The broker's HTTP layer: OAuth error answers, request bodies, the admin guard, and the
one services object every handler gets."""
