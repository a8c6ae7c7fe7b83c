from .event_listener import EventListener, StopListening
from .session import Session
