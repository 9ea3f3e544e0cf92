"""A live page of the app's background work, inside the app, and its JSON API.

```python
from fastapi_tasks.monitor import monitor_router

app.include_router(monitor_router(dependencies=[Depends(admin_only)]), prefix="/tasks")
```

Without ``dependencies`` it answers only clients on this machine. See the monitor page
of the documentation for the JSON API's paths.
"""

from ._router import monitor_router as monitor_router

__all__ = ["monitor_router"]
